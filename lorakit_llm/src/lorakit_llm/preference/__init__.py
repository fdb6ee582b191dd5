"""Preference tuning (DPO, ORPO, SimPO) for the llm backend: data, losses and the method."""
