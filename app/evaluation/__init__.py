"""Offline evaluation of the plan pipeline on SMCalFlow dialogues (`plan-eval`)."""
