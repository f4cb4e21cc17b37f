"""The health monitor at run time: schedules probes, feeds the tracker, applies its decisions
to the ticket store, and keeps the tracker's state beside the tickets."""
