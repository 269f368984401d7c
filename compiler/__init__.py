"""edgefleet.compiler"""
