"""The wire: bytes between Docker clients and dockerd, and nothing about images.

This part moves HTTP/1.1 exchanges and hijacked streams between a client
connection and its own daemon connection, and says where each message ends.
It knows the Engine API only as far as a path can tell (``routes``); it has
no idea what a recipe or a heal is. The healing part plugs in through the
``Interceptor`` and ``Handler`` of ``hub`` and ``local``, so the data path
never calls upward.

Pure (no I/O, no asyncio; tested without sockets): ``http1`` (framing),
``states`` (the data path's state tables), ``rules`` (the decisions that
span both sides of a connection), ``routes`` (which endpoint a path is),
``errors`` (the answers the proxy writes itself), ``gojson`` (client JSON
read as dockerd's Go decoder reads it), ``gobind`` (bodies bound onto the
Engine API's Go types, as dockerd binds them), ``bodychecks`` (what a
policy lets a create, an exec or a volume create do), ``hostpath`` (a bind
source resolved as the kernel resolves it, in the daemon's root), ``sessionrelay`` (reading
BuildKit's ``/session`` along and holding a Dockerfile's end) with
``grpcmessages`` and ``fsutil`` (the messages and packets it reads). With
I/O, split as h11 splits state, readers and writers, and connection:
``connection`` (the client side and the plain path, run on every chunk),
``local`` (a claimed request's exchange, which its handler drives),
``daemon`` (opening the daemon connection, bytes waiting for it, its
going), ``splice`` (raw streams), ``buildsession`` (the splice of a
``/session``, read along), ``flow`` (pausing reading, held bytes' water
marks), ``hub`` (what a listener's connections share), ``gate`` (a
connection's policy and audit record, judged at each head), ``peer`` (the
caller as the kernel saw it at accept) and ``listener`` (claiming the
proxy's own socket).

May import: the standard library only. Nothing else of the project.
"""
