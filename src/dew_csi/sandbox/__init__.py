"""The local sandbox cluster: a Kubernetes API emulator (`apiserver`, with its pure state and
rules in `apistore` and `kubectl get` tables in `apitables`) and the parts wired around it."""
