"""router: the Open Inference Protocol (V2) data plane with a sticky weighted split."""
