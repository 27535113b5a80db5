"""What a run tells: the ledger of step executions and the run report, its table, its
timeline plot, and progress while it runs."""
