"""Demand: from raw readings (vLLM samples, the gateway's counters) to the policy's DemandSample."""
