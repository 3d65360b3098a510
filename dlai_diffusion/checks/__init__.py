"""Visible checks for the exercise notebooks, one module per lecture (``lecture01``, ...).

Each check takes the student's function, compares it with an independent reference and
either prints a short confirmation or raises ``AssertionError`` saying what is wrong.
"""
