"""The Communication Credits admin page: server-rendered HTML served by every worker."""
