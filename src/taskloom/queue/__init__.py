"""The job host: one generic job queue per declared queue, the fair scheduler, the worker
process (bullmq Workers, heartbeat, graceful shutdown) and periodic upkeep. Domains plug their
jobs and upkeep into it (queue/host.py); it imports no domain (docs/QUEUE.md)."""
