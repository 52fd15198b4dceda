"""HTTP API of segment-stream: request parsing, pagination, models and the OpenAPI document."""
