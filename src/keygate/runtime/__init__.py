"""The running gateway: providers with their pools and limits, keys and their operations, the
store kept in step, and what the gateway tells about itself (views, health, metrics)."""
