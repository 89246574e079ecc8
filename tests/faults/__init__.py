"""Fault-injection harness shared by the fault tests and the soak (``tests.faults.soak``)."""
