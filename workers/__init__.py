"""unifork workers: the data plane on each KVM host (VMs, rings, fork)."""
