"""gRPC servicers of the controller: thin adapters from the wire to ``controller.service``."""
