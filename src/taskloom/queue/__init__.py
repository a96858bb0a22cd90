"""BullMQ queues, the worker runner, graceful shutdown and the reconciler (docs/QUEUE.md)."""
