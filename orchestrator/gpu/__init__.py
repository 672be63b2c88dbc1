"""GPUs as the control plane sees them: NVML access (``nvml``) and packing runs onto GPUs
by free memory (``packing``). torch-free, so the guard and the local backend share it."""
