"""`tocsin demo`: a simulated site (HTTP devices, a cloud API, an SNMP agent, MQTT devices, a
webhook receiver) and a scripted timeline of failures, watched by the real daemon.

The pieces are plain classes a benchmark can reuse: `SimulatedSite(devices=N)` with
`fail(ids, mode)` / `recover(ids)`, `SnmpAgent`, `MqttSite` (+ `Mosquitto`), `WebhookReceiver`
and `Scenario(script, site=..., speed=...)` playing a list of `Step`s.
"""

from tocsin.demo.mqtt import DEMO_MQTT_DEVICES, Mosquitto, MqttSimDevice, MqttSite, broker_reachable
from tocsin.demo.receiver import Delivery, WebhookReceiver, verify
from tocsin.demo.run import DemoError, DemoOptions, Windows, demo_config, run_demo
from tocsin.demo.scenario import DEMO_PERIOD, Scenario, Step, demo_script, flap
from tocsin.demo.site import NAMED_DEVICES, SimDevice, SimulatedSite, make_devices
from tocsin.demo.snmp_agent import SnmpAgent

__all__ = [
    "DEMO_MQTT_DEVICES",
    "DEMO_PERIOD",
    "NAMED_DEVICES",
    "Delivery",
    "DemoError",
    "DemoOptions",
    "Mosquitto",
    "MqttSimDevice",
    "MqttSite",
    "Scenario",
    "SimDevice",
    "SimulatedSite",
    "SnmpAgent",
    "Step",
    "WebhookReceiver",
    "Windows",
    "broker_reachable",
    "demo_config",
    "demo_script",
    "flap",
    "make_devices",
    "run_demo",
    "verify",
]
