from test_driver.machine import BaseMachine
from test_driver.vlan import VLan

class Driver:
    machines: list[BaseMachine]
    vlans: list[VLan]
