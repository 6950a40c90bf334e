"""Generation jobs as plain data: the events a job publishes and the backend interface behind the routes."""
