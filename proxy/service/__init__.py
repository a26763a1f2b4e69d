"""The service: the process a person or systemd starts, and what it reports.

``cli`` parses the command line, ``settings`` merges it with the config and
the environment, ``app`` wires the wire, the healer and the metrics
together and ``server`` runs them with signals, socket activation and a
clean shutdown (``systemd`` speaks the service protocol). ``metrics`` serves
Prometheus text and ``/healthz``; ``status``, ``check`` and ``logs`` are what
people read. ``trust`` decides whether root may run a file someone else could
change, over the stat facts ``trustscan`` gathers from the config.
``listeners`` reads ``[[listeners]]`` (sockets, policies, client rules) and
says what ``check`` warns of about them.

Pure: ``check`` (text from a config), ``settings`` (resolution rules),
``listeners`` (the listeners' entries), ``trust`` (the StrictModes rule);
the rest are the program's edges.

May import: every other part. Nothing imports it but its two entry points:
``proxy.__main__`` and the ``docker-heal-proxy`` console script (``cli.main``).
"""
