"""Controller logic as plain functions over the store: what the thin gRPC servicers call."""
