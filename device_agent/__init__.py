"""edgefleet.device_agent"""
