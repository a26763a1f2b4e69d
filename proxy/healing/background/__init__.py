"""What heals without a request: proactive heals after a prune.

``proactive`` owns the tasks: the event ``watcher``, the reconcile
schedule and the background workers. What to heal and when is decided by
pure functions: ``reconcile`` (the schedule and the queue) and ``memory``
(the tags of pattern recipes worth keeping); ``memoryfile`` keeps that
memory across restarts.

Pure: ``reconcile`` and ``memory``.

May import: ``healing.core``, ``healing.sources`` and ``proxy.recipes``.
Never ``healing.claims`` (the two kinds of trigger are independent),
``proxy.wire`` nor ``proxy.service``.
"""
