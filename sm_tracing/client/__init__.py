"""The client side: the botocore hook of SageMaker calls, its lifecycle, streams, batch
transform jobs and bidirectional streams, and the instrumentor that installs them."""
