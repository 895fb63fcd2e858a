"""AWS Lambda entry point: ``handler`` (API Gateway REST and HTTP APIs, ALB, Lambda@Edge) through Mangum.

The model loads once per Lambda instance, in its init phase; each event is one request, answered
directly (an instance gets one event at a time, so there is nothing to batch). A container image needs
none of this when it runs the AWS Lambda Web Adapter, which forwards events to the HTTP server the
image already starts on port 8080.
"""

from mangum import Mangum

from .app import app, load_model

load_model()
handler = Mangum(app, lifespan="off")
