"""Building blocks of the serving tiers (edge nodes, cloud workers) and of the hops to them.

- ``batcher``: a dynamic batcher in front of one model session (Triton-style: max batch size, max
  queueing delay, priorities, deadlines, a bounded queue).
- ``balancer``: weighted load balancing over a pool's workers with outlier ejection (Envoy-style).
- ``codec``: activation bytes on the wire, raw or losslessly compressed when it pays for the link.
- ``cost``: the per-call + per-row compute-time model the batcher learns and judges deadlines by.

No gRPC, no protobuf here: the agent's servicers and clients wire these in.
"""

from agent.serving.balancer import Balancer, Endpoint, EndpointState
from agent.serving.batcher import BatcherStats, BatchResult, DynamicBatcher
from agent.serving.codec import CodecPolicy, decode, encode
from agent.serving.cost import ComputeCost, CostEstimator
from agent.serving.errors import DeadlineExceeded, NotBatchable, RunFailed

__all__ = [
    "Balancer",
    "BatchResult",
    "BatcherStats",
    "CodecPolicy",
    "ComputeCost",
    "CostEstimator",
    "DeadlineExceeded",
    "DynamicBatcher",
    "Endpoint",
    "EndpointState",
    "NotBatchable",
    "RunFailed",
    "decode",
    "encode",
]
