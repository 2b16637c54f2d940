"""Query time: the gRPC server, its client and the explorer page; serving.build makes what they serve."""
