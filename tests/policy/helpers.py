"""Small valid policy documents to build test files from, and a way to see their errors as text."""

from __future__ import annotations

import textwrap

from controller.policy import PolicyLoad, read_policy_texts

GROUP = """\
apiVersion: edgefleet.io/v1alpha1
kind: DeviceGroup
metadata:
  name: eu-phones
spec:
  hardwareClass: phone-cpu
  selector:
    matchLabels:
      region: eu
"""

EDGE_POOL = """\
apiVersion: edgefleet.io/v1alpha1
kind: ComputePool
metadata:
  name: eu-edge
spec:
  tier: edge
  hardwareClass: edge-npu
  nodes:
    selector:
      matchLabels:
        pool: eu-edge
  clients:
    selector:
      matchLabels:
        region: eu
  slotsPerNode: 2
"""

CLOUD_POOL = """\
apiVersion: edgefleet.io/v1alpha1
kind: ComputePool
metadata:
  name: gpus
spec:
  tier: cloud
  hardwareClass: cloud-gpu
  nodes:
    names: [gpu-1]
"""

DEPLOYMENT = """\
apiVersion: edgefleet.io/v1alpha1
kind: ModelDeployment
metadata:
  name: minilm-eu
spec:
  model: minilm
  group: eu-phones
  objectives:
    latency:
      percentile: 95
      maxMs: 80
  partitioning:
    edgePools: [eu-edge]
    cloudPools: [gpus]
"""


def docs(*parts: str) -> str:
    """Documents joined into one multi-document file."""
    return "---\n".join(textwrap.dedent(p) for p in parts)


def valid_files() -> dict[str, str]:
    return {"group.yaml": GROUP, "pools.yaml": docs(EDGE_POOL, CLOUD_POOL), "deploy.yaml": DEPLOYMENT}


def load(texts: dict[str, str]) -> PolicyLoad:
    return read_policy_texts(texts)


def error_lines(texts: dict[str, str]) -> list[str]:
    return [str(e) for e in read_policy_texts(texts).errors]
