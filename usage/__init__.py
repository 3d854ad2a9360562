"""Usage accounting and budgets: what each answer spent (tokens, cost), per API key, user, session and
model, kept in Redis; the budgets that stop a key before it spends too much (issue #16).

The modules import nothing of `config` at run time (`config` reads `usage.plans` to check its settings).
"""
