"""Structured pruning: channel groups, surgery, budgets and the pruning methods behind one interface."""
