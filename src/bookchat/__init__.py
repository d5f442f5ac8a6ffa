"""bookchat: chat with your Docusaurus book."""

__version__ = "0.1.0"
