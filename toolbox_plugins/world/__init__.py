"""The emoji world (named Twemoji objects in varied scenes, OpenMoji as a second style) and the tiny
CLIPs trained on it: the embedded default."""
