"""Stage 6, the report: findings with their recording, as a table, JSON, SARIF or GitHub
annotations, and the depth profile's table and plot.
"""
