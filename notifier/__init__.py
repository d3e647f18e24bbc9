"""bland-notifier: watch Bland AI's active calls and notify on transitions."""

__version__ = "0.1.0"
