"""Helpers of the tests and benchmarks: real servers on free loopback ports, small random
artifacts and archives, the container engine. Not part of any image (Dockerfile and
container/image.sh copy core, common, archives, handlers, gateway, sagemaker, and etl, training,
monitoring for the training image): nothing served imports this package."""
