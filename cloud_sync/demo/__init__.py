"""edgefleet.cloud_sync.demo: ``edgefleet demo``, the whole loop in one command on this machine.

- :mod:`.scenario` - the data story (pure numpy): a weak cloud training set, a coordinator
  holdout, a held-out test set, and non-IID device partitions (sensor stream + labelled samples);
- :mod:`.procs` - prerequisites with clear errors (mosquitto, Flower tools), Mosquitto on a free
  loopback port, child processes in their own process groups, cleanup and the leftover sweep;
- :mod:`.device` - one simulated device process: the agent connected through cloud sync and
  supervising its own ``flower-supernode``, predicting on its local data, drift on command;
- :mod:`.status` - the live status line and the summary table (pure formatting);
- :mod:`.runner` - the orchestration, stage by stage, and ``summary.json``;
- :mod:`.cli` - ``edgefleet demo`` (light at import).
"""
