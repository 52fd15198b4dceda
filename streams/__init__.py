"""segment-stream: exact, live recommendation-segment counts on Kafka and Faust."""

__version__ = "0.1.0"
