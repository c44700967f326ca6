"""Kubernetes adapters: reading pods and objects into plain values, and acting on the cluster."""

from controller.kube.pods import PodInfo, pod_info, ready_endpoints, selector_matches

__all__ = ["PodInfo", "pod_info", "ready_endpoints", "selector_matches"]
