"""Developer tools: the local Kafka and Redis launchers, the load generator, the demo and the
benchmark. Never imported by the worker."""
