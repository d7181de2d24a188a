"""The remote-desktop stack on the worker (Xvnc, window manager, terminal) and what it needs to know of RFB."""
