"""edgefleet.cloud_sync.wire: what travels between a device and the coordinator, pure (no I/O at import, no paho).

- :mod:`.protocol`: topics and the JSON messages (and binary chunk frames), each validated on receipt;
  job states are :class:`edgefleet.jobstate.JobState`, shared with the device's update machine.
- :mod:`.transfer`: chunked, resumable bundle transfer (the pure :class:`~.transfer.Receiver`, the coordinator's
  :func:`~.transfer.serve_request`, bsdiff4 deltas) and the chunk file a device keeps on disk.
- :mod:`.orders`: the coordinator's signed rollback orders and their check on the device.
"""
