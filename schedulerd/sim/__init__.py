"""Trace-driven simulation: schedulerd's real `decide()` on a virtual clock and a
simulated cluster, beside baselines (FIFO, static partitions). See docs/simulator.md."""
