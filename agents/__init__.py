"""Agents that act in the finetune-gym environments (RecurrentPPO, other SB3 algorithms, baselines).

Empty until the agent milestone lands; kept so the package layout is final.
"""
