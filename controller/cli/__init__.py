"""fleetctl: the controller server and the operators' admin CLI."""
