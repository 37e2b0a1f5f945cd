#!/bin/sh
# The image's entry point. SageMaker runs `docker run IMAGE train` and `docker run IMAGE serve`.
#   train  -> the training contract (recsys train, under /opt/ml)
#   serve  -> the hosting contract (recsys serve on $SAGEMAKER_BIND_TO_PORT, default 8080)
#   prepare -> the Processing contract (recsys prepare: /opt/ml/processing/input -> output)
#   (none) -> this usage text
#   other  -> exec'd as given, e.g. `docker run IMAGE recsys hyperparameters` or `bash`
set -e
case "${1:-}" in
  train)
    shift
    exec recsys train "$@"
    ;;
  serve)
    shift
    exec recsys serve "$@"
    ;;
  prepare)
    shift
    exec recsys prepare "$@"
    ;;
  "")
    cat <<'USAGE'
recsys: neural collaborative filtering for Amazon SageMaker.
usage: docker run IMAGE train    train under /opt/ml (channels in /opt/ml/input/data)
       docker run IMAGE serve    serve /opt/ml/model on port 8080
       docker run IMAGE prepare  clean and split raw logs (a Processing job; prepare --help)
       docker run IMAGE CMD...   run any other command, e.g. `recsys --help`
USAGE
    ;;
  *)
    exec "$@"
    ;;
esac
