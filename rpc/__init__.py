"""The order service's three wires (gRPC now; SOAP and Dubbo-style to follow) and the one
error model they share."""
