"""Executions: the whole life of a run of a workflow, from `POST /api/workflows/{id}/execute`
to its final status (API, state machine, queue binding, runner, steps, templating, upkeep)."""
