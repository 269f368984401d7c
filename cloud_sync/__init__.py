"""edgefleet.cloud_sync"""
