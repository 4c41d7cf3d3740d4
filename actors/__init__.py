"""The platform's actors: plain logic classes (sequencer, mailboxes, shard, router), made into Ray
actors in one place, remote.py. Installed as the package `switchboard.actors`."""
