"""The platform's actors: plain logic classes (sequencer, mailboxes, shard, router), made into Ray
actors in one place, remote.py. Installed as the package `switchboard.actors`."""

import time

# The first of this package's modules a restarting actor process imports (while Ray unpickles its
# class): where a restart's time in our imports begins (actors/startup.py reads it).
IMPORTED_AT = time.time()
