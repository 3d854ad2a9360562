"""The stores behind the service, each owning its Redis keys and the commands that write them:
`history` (a session's turns), `answers` (each answer's state), `replay_log` (a session's events).

A store's writes that must land together with another's (a user turn and the log position it was
stored at; an answer's last turn and its final state) are returned as commands, which the service sends
in one batch or transaction through the `CommandBatcher` every store takes at construction.
"""
