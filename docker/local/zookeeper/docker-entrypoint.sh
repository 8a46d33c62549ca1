#!/bin/bash
# Writes /conf/zoo.cfg and /data/myid from the official zookeeper image's environment variables, then runs
# the command (by default `zkServer.sh start-foreground`) in place of this shell so it gets the signals.
set -e

if [[ ! -f "$ZOO_CONF_DIR/zoo.cfg" ]]; then
    config="$ZOO_CONF_DIR/zoo.cfg"
    {
        echo "dataDir=$ZOO_DATA_DIR"
        echo "dataLogDir=$ZOO_DATA_LOG_DIR"
        echo "tickTime=$ZOO_TICK_TIME"
        echo "initLimit=$ZOO_INIT_LIMIT"
        echo "syncLimit=$ZOO_SYNC_LIMIT"
        echo "autopurge.snapRetainCount=$ZOO_AUTOPURGE_SNAPRETAINCOUNT"
        echo "autopurge.purgeInterval=$ZOO_AUTOPURGE_PURGEINTERVAL"
        echo "maxClientCnxns=$ZOO_MAX_CLIENT_CNXNS"
        echo "standaloneEnabled=$ZOO_STANDALONE_ENABLED"
        echo "admin.enableServer=$ZOO_ADMINSERVER_ENABLED"
        echo "4lw.commands.whitelist=$ZOO_4LW_COMMANDS_WHITELIST"
        if [[ -z "$ZOO_SERVERS" ]]; then
            echo "clientPort=2181"
        else
            # The official image's form: "server.1=zk1:2888:3888;2181 server.2=...", separated by spaces.
            for server in $ZOO_SERVERS; do echo "$server"; done
        fi
        if [[ -n "$ZOO_CFG_EXTRA" ]]; then
            for option in $ZOO_CFG_EXTRA; do echo "$option"; done
        fi
    } > "$config"
fi

if [[ ! -f "$ZOO_DATA_DIR/myid" ]]; then
    echo "${ZOO_MY_ID:-1}" > "$ZOO_DATA_DIR/myid"
fi

export ZOOCFGDIR="$ZOO_CONF_DIR" ZOOCFG="$ZOO_CONF_DIR/zoo.cfg"
if [[ "$1" == "zkServer.sh" && "$2" == "start-foreground" ]]; then
    exec zkServer.sh start-foreground "$ZOO_CONF_DIR/zoo.cfg"
fi
exec "$@"
